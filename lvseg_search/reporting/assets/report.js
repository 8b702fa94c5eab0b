(function(){
var table=document.getElementById('trials');if(!table)return;var body=table.tBodies[0];
function pairs(){var r=[],rows=body.rows;
 for(var i=0;i<rows.length;i+=2)r.push([rows[i],rows[i+1]]);return r;}
table.querySelectorAll('th[data-key]').forEach(function(th){th.addEventListener('click',function(){
 var key=th.dataset.key,asc=!th.classList.contains('sorted-asc');
 table.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
 th.classList.add(asc?'sorted-asc':'sorted-desc');
 var ps=pairs();ps.sort(function(a,b){
  var x=a[0].getAttribute('data-'+key),y=b[0].getAttribute('data-'+key);
  var nx=parseFloat(x),ny=parseFloat(y),empty=function(v){return v===null||v==='';};
  if(empty(x)||empty(y))return empty(x)-empty(y);
  var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
 ps.forEach(function(p){body.appendChild(p[0]);body.appendChild(p[1]);});});});
table.addEventListener('click',function(ev){var b=ev.target.closest('button.toggle');if(!b)return;
 var more=b.closest('tr').nextElementSibling;more.classList.toggle('open');
 b.textContent=more.classList.contains('open')?'\u25be':'\u25b8';});
var pick=document.getElementById('status');if(pick)pick.addEventListener('change',function(){
 pairs().forEach(function(p){var show=pick.value==='all'||p[0].dataset.status===pick.value;
  p[0].style.display=show?'':'none';if(!show)p[1].classList.remove('open');});});
})();
